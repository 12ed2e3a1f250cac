"""What users call: one expansion, many structures, a geometry optimisation.

``expansion`` (``plan``, ``start``, ``submit``, ``compute``), ``structures`` (many
structures sharing one cluster and store), ``optimize`` (geomeTRIC on MBE gradients) and
``options`` (the run options they share). Imports every stage before it; above sit
``interfaces`` (mbdask inside other programs' loops: the ASE calculator), then ``mbdask.cli``.
"""
