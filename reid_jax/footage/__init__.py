"""Re-identification on a user's own footage: the layouts of tracklet folders and videos and the
chunk-stream source over them (`sources`), track files as trackers and benchmarks write them
(`tracks`), videos and their damage (`videos`), one feature per tracklet (`embed`), and the
search over them with its outputs (`search`)."""
