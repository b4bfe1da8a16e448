"""The toy world: synthetic ball-sports data (`data`) and the tiny `mini` base model (`model`)."""
