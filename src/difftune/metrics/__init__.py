"""Distribution metrics (KID, FID) on a choice of feature networks."""
