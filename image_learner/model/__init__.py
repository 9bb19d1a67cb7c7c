"""Model stage: the trained model's archive and manifest (validated as hostile input) and predict."""
