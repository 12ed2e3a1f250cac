"""Results: the ``ManyBodyResult`` assembled from the calculations, and written to disk.

``assemble`` runs QCManyBody's own analysis over the energies (the numbers a sequential
QCManyBody run gives) and adds increments, levels and timings; ``outputs`` writes results
atomically and reads them back. Imports calculation and below.
"""
