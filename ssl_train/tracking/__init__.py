"""What a run leaves for people: experiment trackers, pictures during training, the run report, the sweep summary."""
