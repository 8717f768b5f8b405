"""The workflows that run a trained model through a whole job, each a few library calls the CLI and Python users
share: `inference` (evaluate a checkpoint or exported file on a split, predict files), `deploy` (a source to an
exported file, measured against its checkpoint), `pruning` (prune to a MACs target, then a training run)."""
