"""Re-identification on a user's own footage: tracklet folders or videos with track files
(`sources`), one feature per tracklet (`embed`)."""
