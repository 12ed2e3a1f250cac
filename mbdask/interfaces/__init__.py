"""mbdask inside other programs' loops: an ASE calculator on MBE energies and forces.

``ase`` (:class:`~mbdask.interfaces.ase.ManyBodyCalculator`) lets ASE's optimisers, molecular
dynamics and vibrational analysis ask a many-body expansion for energies and forces, one
expansion per geometry on a cluster started once. Sits above ``workflows``, whose expansion
and optimisation machinery it drives; only the command line and the package root sit above it.
The third-party program (ASE) is an optional dependency, imported by the module that needs it.
"""
