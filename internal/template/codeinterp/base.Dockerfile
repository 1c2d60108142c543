# The base template re-snapshotted at the code interpreter's shape (2 vCPU,
# 2048 MiB): no steps, only a new snapshot. A build sandbox has its parent's
# memory, and installing deps.Dockerfile's packages in a 512 MiB base sandbox
# ran it out of memory (gVisor, at py3compile, after 13 minutes).
FROM base
