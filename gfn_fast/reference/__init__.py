"""Plain-PyTorch implementations of the spec: differentiable by autograd, the ground truth of
tests."""
