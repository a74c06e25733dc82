"""Multi-stage runs built on the job runner ``caa_lens.jobs``: the main job (``main``), its report
(``report``), the refusal study (``refusal``) and ActAdd's experiments (``actadd``)."""

__all__: list[str] = []  # a namespace: import the job modules themselves
