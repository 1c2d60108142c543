# The code interpreter's packages, on the base template: a template of its
# own (code-interpreter-deps) so that a change of the server rebuilds only
# the small top layer (Dockerfile), not this one. All from Debian bookworm;
# node-typescript (67 MB) lets the TypeScript contexts strip types.
FROM code-interpreter-base
USER root
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      python3-ipykernel python3-jupyter-client python3-numpy python3-pandas python3-matplotlib \
      python3-scipy python3-seaborn python3-plotly python3-sklearn python3-openpyxl python3-requests \
      python3-bs4 node-typescript >/dev/null && rm -rf /var/lib/apt/lists/*
USER user
# Matplotlib's font cache, built once here rather than in every sandbox.
RUN python3 -c 'import matplotlib.pyplot, pandas, numpy'
