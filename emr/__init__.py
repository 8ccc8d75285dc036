"""Launch the pipeline on AWS EMR: package, upload, create the cluster, add one step per stage, follow.

Modules: ``config`` (validated conf/emr.yaml and conf/pipeline.yaml), ``package`` (git archive of the
exact commit), ``cluster`` (the run_job_flow request), ``steps`` (spark-submit steps), ``follow``
(polling, progress, cost), ``iam`` (job-role policy), ``launch`` (the command line), ``run_stage``
(the script spark-submit runs on the cluster), ``lock`` (hashed requirements for the bootstrap).
Nothing here imports boto3 at package import time: ``run_stage`` runs on the cluster without it.
"""
