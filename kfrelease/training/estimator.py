"""What an estimator must be for a training run: a scikit-learn compatible regressor, checked before any data is
read, through scikit-learn's public API only, so that an estimator class a project defines in its ``build:``
code is held to the same rules as scikit-learn's own.

- it has ``fit`` and ``predict``;
- when it has ``get_params`` (a scikit-learn estimator), ``sklearn.base.clone`` can copy it (its ``__init__`` stores each argument unchanged under the same name, the
  convention ``get_params``/``set_params`` rely on: scikit-learn's "rolling your own estimator" guide);
- scikit-learn's own classes (those that declare their parameter constraints) also validate their
  hyper-parameters now, not after the data is read.

Such a class is shipped with the model by value (the sklearn flavour writes with ``cloudpickle``), so the model
servers load it without the project's code installed.
"""

from __future__ import annotations

from kfrelease.errors import ConfigError


def check_estimator(est, where: str) -> None:
    """Raise one ``ConfigError`` line naming what is wrong with ``est`` and what to do instead."""
    name = type(est).__name__
    if not (callable(getattr(est, "fit", None)) and callable(getattr(est, "predict", None))):
        raise ConfigError(f"{where}: {name} has no fit/predict; return a scikit-learn compatible regressor")
    if not callable(getattr(est, "get_params", None)):
        return  # duck-typed (fit/predict only): nothing more to check before it is fitted
    from sklearn.base import clone  # heavy: sklearn

    try:
        clone(est)
    except Exception as exc:  # noqa: BLE001 - any failure of the copy is the same user mistake
        raise ConfigError(
            f"{where}: {name} cannot be copied by sklearn.base.clone ({type(exc).__name__}: {exc}); store every "
            "__init__ argument unchanged as an attribute of the same name and do the work in fit()"
        ) from None
    if "_parameter_constraints" in dir(type(est)):  # scikit-learn's own classes: validate hyper-parameters now
        try:
            est._validate_params()
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{where}: invalid hyper-parameter: {exc}") from None
