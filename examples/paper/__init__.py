"""Scripts reproducing the findings of Avidan, Li & Sompolinsky (arXiv:2309.04522) with ndk_flax (docs/theory.md §5–6).

Each script writes PNG figures, ``summary.md`` (what was and was not reproduced, with numbers) and ``results.json``
to ``--out``; ``--quick`` is a small preset used by the tests. ``python -m examples.paper.all [--quick]`` runs them all.

* :mod:`examples.paper.two_phases`: gradient-driven and diffusive phases vs T and σ0²/σ² (synthetic data).
* :mod:`examples.paper.parameter_dependence`: σ0, σ, T, depth, ReLU/erf; non-monotonic convergence.
* :mod:`examples.paper.digits`: binary tasks of scikit-learn's 8×8 digits (0-vs-1, 4-vs-9).
* :mod:`examples.paper.drift`: representational drift, all weights plastic and with a frozen readout.
"""
