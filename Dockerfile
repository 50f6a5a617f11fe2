# The one kfrelease image (target `project`): the base image of every KFP component (`KFRELEASE_IMAGE`,
# kfrelease/images/project.py) and the image of the KServe ServingRuntime `kfrelease-predictor`, the log sink and
# the feedback service on EKS. Target `workspace` adds JupyterLab + jupyterlab-git for the data scientists'
# Kubeflow Notebooks (same library, same versions).
#
#   docker build --target project   -t $REGISTRY/kfrelease:0.1.0 .
#   docker build --target workspace -t $REGISTRY/kfrelease-workspace:0.1.0 .
#   docker build --target spark     -t $REGISTRY/kfrelease-spark:0.1.0 .
#
# CI builds and pushes both on every release tag (ci/github/kfrelease-image.yaml) and compiles every pipeline
# package against the project image BY DIGEST (KFRELEASE_IMAGE=$REGISTRY/kfrelease@sha256:...).
# `pip install .` builds a wheel that carries the folders the library reads at run time (schemas/,
# manifests/, examples/: kfrelease/resources.py RESOURCE_DIRS) as package data, so each is COPYed below;
# tests/manifests/test_ci_and_image.py checks that every COPY the build needs is here.
#
# No secrets: object-store credentials come from IRSA (web identity) at run time, never from the image.
# Python dependencies are pinned by constraints.txt, the same file `make setup` installs with.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# Apache Spark's own image (apache/spark-docker 4.0.1/scala2.13-java17-ubuntu/Dockerfile): only its Spark
# distribution is taken (/opt/spark, and /opt/entrypoint.sh + /opt/decom.sh that the Spark Operator's driver
# and executor pods run), onto the project image, whose Python (3.11) kfrelease needs.
ARG SPARK_IMAGE=apache/spark:4.0.1-scala2.13-java17-ubuntu
FROM ${SPARK_IMAGE} AS spark-dist

FROM ${PYTHON_IMAGE} AS project
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# git: training runs the model code at a commit; skopeo + umoci + busybox-static: the containerize
# component builds ModelCar images (models under /models, `ln` and `sleep` from busybox) and pushes them;
# amazon-ecr-credential-helper: skopeo's ECR login with the pod's IRSA credentials (REGISTRY_AUTH_FILE,
# set by the release namespace's PodDefault `pipeline-pods-env`).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates git skopeo umoci busybox-static \
      amazon-ecr-credential-helper \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/kfrelease
COPY setup.py constraints.txt ./
COPY kfrelease ./kfrelease
COPY components ./components
COPY pipelines ./pipelines
COPY serving ./serving
COPY schemas ./schemas
COPY manifests ./manifests
COPY examples ./examples
# The `boosters` extra (xgboost-cpu, lightgbm, onnxmltools): the predictor serves the xgboost and lightgbm flavours
# the ServingRuntime lists (kfrelease.registry.artifact.model_formats()).
# After the install only constraints.txt stays here (the workspace stage uses it): a source tree in the working
# directory would shadow the installed package (`python -m` puts the cwd first on sys.path).
RUN pip install -c constraints.txt ".[boosters]" \
 && find . -mindepth 1 -maxdepth 1 ! -name constraints.txt -exec rm -rf {} + \
 && python -c "from kfrelease.resources import resource_dir; from kfrelease.k8s.environments import load_environments; import kserve, kfp; load_environments(); print('kfrelease image ok', resource_dir('schemas'))"
# A numeric non-root user (KServe's runAsNonRoot needs a numeric UID to verify); uid 1000 "jovyan" with
# home /home/jovyan is also what Kubeflow Notebooks expect.
RUN useradd --uid 1000 --gid 100 --create-home --home-dir /home/jovyan jovyan
USER 1000
ENV HOME=/home/jovyan
# The commit the image was built from, recorded with every registered model (kfrelease/registry/lineage.py).
ARG KFRELEASE_COMMIT=""
ENV KFRELEASE_COMMIT=${KFRELEASE_COMMIT}
EXPOSE 8080
CMD ["kfrelease", "--help"]

FROM project AS workspace
USER root
RUN pip install -c constraints.txt "jupyterlab==4.6.6" "jupyterlab-git==0.55.0"
USER 1000
WORKDIR /home/jovyan
EXPOSE 8888
# Kubeflow's notebook controller routes /notebook/<ns>/<name>/ to port 8888 and sets NB_PREFIX.
ENV NB_PREFIX=/
CMD ["sh", "-c", "exec jupyter lab --ip=0.0.0.0 --port=8888 --no-browser --ServerApp.token='' --ServerApp.password='' --ServerApp.allow_origin='*' --ServerApp.base_url=${NB_PREFIX} --ServerApp.authenticate_prometheus=False"]

# The image of the monitoring SparkApplication (kfrelease.monitoring.spark_app, run by the Kubeflow Spark
# Operator): the project image plus Java 17, the Spark 4.0.1 distribution, the hadoop-aws jars for s3a://
# (Hadoop 3.4.1, the client Spark 4.0.1 ships, and the AWS SDK v2 bundle it was built against) and pyspark at
# the same version. The application file is kfrelease/lake/spark.py at the path the SparkApplication names.
# S3 credentials come from IRSA (WebIdentityTokenFileCredentialsProvider), never from the image.
FROM project AS spark
USER root
ARG TARGETARCH=amd64
RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless tini procps \
 && rm -rf /var/lib/apt/lists/*
COPY --from=spark-dist /opt/spark /opt/spark
COPY --from=spark-dist /opt/entrypoint.sh /opt/decom.sh /opt/
ADD https://repo1.maven.org/maven2/org/apache/hadoop/hadoop-aws/3.4.1/hadoop-aws-3.4.1.jar /opt/spark/jars/
ADD https://repo1.maven.org/maven2/software/amazon/awssdk/bundle/2.24.6/bundle-2.24.6.jar /opt/spark/jars/
RUN pip install -c constraints.txt "pyspark==4.0.1" \
 && chmod a+r /opt/spark/jars/*.jar \
 && mkdir -p /opt/kfrelease/kfrelease/lake /opt/spark/work-dir && chown 1000 /opt/spark/work-dir
COPY kfrelease/lake/spark.py /opt/kfrelease/kfrelease/lake/spark.py
ENV SPARK_HOME=/opt/spark \
    JAVA_HOME=/usr/lib/jvm/java-17-openjdk-${TARGETARCH} \
    PYSPARK_PYTHON=python3
WORKDIR /opt/spark/work-dir
USER 1000
ENTRYPOINT ["/opt/entrypoint.sh"]
