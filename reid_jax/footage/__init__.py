"""Re-identification on a user's own footage: tracklet folders or videos with track files as a
chunk-stream source (`sources`), one feature per tracklet (`embed`), and the search over them
with its outputs (`search`)."""
