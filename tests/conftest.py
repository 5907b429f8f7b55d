import torch
from hypothesis import HealthCheck, settings

# One torch thread per test process: CI runs two pytest-xdist workers on two cores, and the
# tests' tensors are small enough that more threads cost synchronisation, not time.
torch.set_num_threads(1)
settings.register_profile("ci", max_examples=40, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile("ci")
