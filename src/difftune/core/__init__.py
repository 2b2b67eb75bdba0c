"""The core: the LightningModule, the prediction-type algebra, the sampling loop, EMA."""
