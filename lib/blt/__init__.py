"""The byte-level entropy model: its data, the model, training and analysis."""
