"""Regression quality, one definition for every part: the metrics (``metrics``: MSE, RMSE, MAE, R² and their
intervals), input drift against the training data (``drift``) and the Evidently regression report
(``evaluation``). Training's evaluate, the release gates and monitoring all compute through here."""
