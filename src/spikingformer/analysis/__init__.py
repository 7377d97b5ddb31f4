"""What a model does with spikes: the synaptic probe and its provenance proof, the energy estimate (Eq. 19-20),
the spike-driven certificate and early exit over time steps.  A library layer: no argparse, no printing."""
