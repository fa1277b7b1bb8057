"""`rpclatch demo`: the scenarios, their verdicts and the artefacts they leave in a run directory."""
