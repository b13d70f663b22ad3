
	tiny-data\Sample the arithmetic tasks; filter, deduplicate and tokenize the stories into token shards.2Nsample_rate=0.25 seed=17 max_tasks=400 batch_size=64 vocab_size=384 seq_len=64JM
tasksio.JsonlSource"4path=../data/tiny/arith.jsonl batch_size=$batch_sizeJ9
sampled	io.Sampletasks"rate=$sample_rate seed=$seedJ(
cappedio.Headsampled"n=$max_tasksJR
write_tasksio.JsonlSinkcapped"-path=tasks.jsonl columns=[id, prompt, answer]JK
docsio.JsonlSource"3path=../data/tiny/docs.jsonl batch_size=$batch_sizeJ#
qualitydata.GopherQualitydocsJ1

repetitiondata.GopherRepetitionquality:keptJ=
dedupdedup.Deduprepetition:kept"stats=dedup_stats.jsonJ7

write_docsio.JsonlSink
dedup:kept"path=docs.jsonlJL
write_qualityio.JsonlSinkquality:rejected"path=excluded_quality.jsonlJU
write_repetitionio.JsonlSinkrepetition:rejected"path=excluded_repetition.jsonlJF
write_duplicatesio.JsonlSinkdedup:removed"path=duplicates.jsonlJ{
	tokenizertokenizer.Train
dedup:kept"Qvocab_size=$vocab_size specials=['<|eos|>'] file=tokenizer.json emit_encoded=trueJ~
packdata.PackTokenstokenizer:encoded"Rseq_len=$seq_len eos=383 vocab_size=$vocab_size val_fraction=0.1 seed=5 dir=shards