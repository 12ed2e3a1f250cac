"""One fragment calculation, as a worker runs it: molecule, QCEngine call, checkpoint store.

``execute`` is what a worker task runs, ``engine`` the QCEngine call with its per-process
costs paid once, ``fragments`` the fragment molecules, ``store`` the checkpoint store of
finished calculations (read and written by the client too). Imports planning and below.
"""
