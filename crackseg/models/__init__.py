"""The two-headed network and the LightningModule that trains it."""
