"""Human-readable class names from a words file (`data.class_words`), e.g. ImageNet's synsets.

A folder dataset's classes are its folder names and TFDS ImageNet's labels are WordNet ids
('n01440764'); a report that names 'n02012849' tells a reader nothing. A words file maps
ids to words, one class a line: the id, then a tab or a space, then comma-separated
synonyms, as ImageNet's `LOC_synset_mapping.txt` ('n01440764 tench, Tinca tinca') and
`words.txt` ('n01440764<TAB>tench, Tinca tinca') both are. A class is named by its first
synonym; two classes with the same first synonym (ImageNet has two 'crane's and two
'maillot's) keep their id in brackets; an id missing from the file stays as it is.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Sequence

from classbias_jax.errors import DataUnavailable


def read_words(path: str) -> dict[str, str]:
  """{class id: first synonym} of a words file (module docstring); DataUnavailable (one
  line) when it cannot be read or names nothing."""
  try:
    with open(os.path.expanduser(path), encoding='utf-8') as f:
      lines = f.read().splitlines()
  except (OSError, UnicodeDecodeError) as e:
    raise DataUnavailable(f'data.class_words: cannot read {path}: {e}') from None
  words = {}
  for line in lines:
    key, _, rest = line.strip().replace('\t', ' ', 1).partition(' ')
    name = rest.split(',')[0].strip()
    if key and name:
      words[key] = name
  if not words:
    raise DataUnavailable(f'data.class_words: {path} holds no "id words" lines')
  return words


def readable(class_names: Sequence[str], words: dict[str, str]) -> tuple[str, ...]:
  """The classes' words where the file has them; a word shared by several classes gets
  the class id in brackets, so names stay distinct."""
  named = [words.get(c, c) for c in class_names]
  shared = {n for n in named if named.count(n) > 1}
  return tuple(f'{n} ({c})' if n in shared and n != c else n
               for n, c in zip(named, class_names))


def apply(dataset, data_config):
  """The dataset with readable class names when `data.class_words` names a file; else as
  is. Works on a Dataset (frozen) and a StreamedDataset alike."""
  path = str(getattr(data_config, 'class_words', '') or '')
  if not path:
    return dataset
  names = readable(dataset.class_names, read_words(path))
  if dataclasses.is_dataclass(dataset):
    return dataclasses.replace(dataset, class_names=names)
  dataset.class_names = names
  return dataset
