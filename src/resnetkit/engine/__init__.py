"""Training loop, evaluation and the run orchestration. Receives nn.Modules; never names an architecture."""
