"""Public test helpers for lasp_streams: lattice law checkers (:mod:`.laws`), Hypothesis
strategies (:mod:`.strategies`) and a replica convergence simulator (:mod:`.replicas`).

Import the submodules directly (``from lasp_streams.testing.laws import check_lattice_laws``);
this package imports nothing on its own so that importing it never needs Hypothesis.
"""
