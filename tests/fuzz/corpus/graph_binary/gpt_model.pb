B÷	
GptBlock5x + Attention(RMSNorm(x)), then + SwiGLU(RMSNorm(.)).x"y=mlp_residual:y*@d_model=256 n_heads=4 n_kv_heads=4 q_dim=256 kv_dim=256 d_ff=688*7theta=10000.0 eps=1e-6 init_std=0.02 out_std=0.02 T=f322)
	attn_norm
nn.RMSNormx"eps=$eps T=$T2G
wq	nn.Linear	attn_norm"+out_features=$q_dim init_std=$init_std T=$T2H
wk	nn.Linear	attn_norm",out_features=$kv_dim init_std=$init_std T=$T2H
wv	nn.Linear	attn_norm",out_features=$kv_dim init_std=$init_std T=$T25
q_heads
nn.Reshapewq"shape=[0, 0, $n_heads, -1]28
k_heads
nn.Reshapewk"shape=[0, 0, $n_kv_heads, -1]28
v_heads
nn.Reshapewv"shape=[0, 0, $n_kv_heads, -1]2(
q_ropenn.RoPEq_heads"theta=$theta2(
k_ropenn.RoPEk_heads"theta=$theta2-
attnnn.Attentionq_ropek_ropev_heads21
	attn_flat
nn.Reshapeattn:o"shape=[0, 0, -1]2H
wo	nn.Linear	attn_flat",out_features=$d_model init_std=$out_std T=$T2
attn_residualnn.Addxwo24
mlp_norm
nn.RMSNormattn_residual"eps=$eps T=$T2E
w1	nn.Linearmlp_norm"*out_features=$d_ff init_std=$init_std T=$T2E
w3	nn.Linearmlp_norm"*out_features=$d_ff init_std=$init_std T=$T2
swiglu	nn.SwiGLUw1w32E
w2	nn.Linearswiglu",out_features=$d_model init_std=$out_std T=$T2)
mlp_residualnn.Addattn_residualw2Bî
GptXToken ids [batch, time] and next-token targets [batch, time] -> mean cross-entropy loss.tokenstargets"loss=loss:loss"logits=head:y*Uvocab=256 n_layers=4 d_model=256 n_heads=4 n_kv_heads=4 q_dim=256 kv_dim=256 d_ff=688*7theta=10000.0 eps=1e-6 init_std=0.02 out_std=0.02 T=f322Y
embednn.Embeddingtokens":num_embeddings=$vocab dim=$d_model init_std=$init_std T=$T2Ì
layersGptBlockembed"Irepeat=$n_layers d_model=$d_model n_heads=$n_heads n_kv_heads=$n_kv_heads"<q_dim=$q_dim kv_dim=$kv_dim d_ff=$d_ff theta=$theta eps=$eps"(init_std=$init_std out_std=$out_std T=$T2/

final_norm
nn.RMSNormlayers"eps=$eps T=$T2J
head	nn.Linear
final_norm"+out_features=$vocab init_std=$init_std T=$T2&
lossnn.CrossEntropyheadtargets