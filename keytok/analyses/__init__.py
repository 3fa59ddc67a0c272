"""The paper's analyses: alignment metrics (Hit@K, LAR, GAR) and the PC1 and spectral fits."""
