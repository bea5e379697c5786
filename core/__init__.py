"""The backbone core every other part builds on: the DINOv2 model family, loading and
hashing weights, devices, and the user-error type. Imports nothing else of dinoret."""
