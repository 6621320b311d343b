"""Errors a user can fix: the entry points print them as one line and exit non-zero."""


class UserError(Exception):
  """Bad config, missing data or unusable files: reported in one line, no traceback."""


class ConfigError(UserError):
  """A config field is unknown, malformed or inconsistent."""


class DataUnavailable(UserError):
  """A dataset cannot be found or read; the message says how to get it."""


class ResultsError(UserError):
  """A results file is missing, truncated, foreign or inconsistent."""


class WriteError(UserError):
  """A file cannot be written (a full disk, no permission); nothing partial is left."""


class JobError(UserError):
  """A job of several processes cannot form or lost a process; the message says which."""


class CheckpointError(UserError):
  """A checkpoint that passed its file check cannot be restored; the message says what to
  delete."""


class DeviceOutOfMemory(UserError):
  """The device ran out of memory; the message names the model, batch and M, and what to
  lower."""
