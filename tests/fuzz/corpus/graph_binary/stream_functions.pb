
stream-functions26layers=3 rate=0.5 heads=4 nope=16 rope=8 inner=io.HeadB‡
Thin-Samples at $rate, seeded by the copy's index.x"y=sample:out*rate=0.525
sample	io.Samplex"rate=$rate seed=$repeat_indexB7
Wrapx"y=body*body_op=io.Head2
body$body_opxJZ
srcio.JsonlSource"Cpath=in.jsonl batch_size=$(heads * (nope + rope)) fields=[text, id]J2
thinThinsrc"repeat=$layers rate=$(rate / 2)J
onceThinthin8J'
wrappedWraponce:y"body_op=$innerJA
outio.JsonlSinkwrapped^src"path=out.jsonl columns=[text]