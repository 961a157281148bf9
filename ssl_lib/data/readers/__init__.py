"""Source readers: one per source layout, each yielding :class:`~ssl_lib.data.store.SliceRecord`.

=================  ===================================  ==========================================
kind               reader                               layout
=================  ===================================  ==========================================
``"lidc"``         :class:`~.lidc.LidcReader`           ``LIDC-IDRI/<patient>/<study>/<series>/*.dcm``
``"covid"``        :class:`~.covidct.CovidCTReader`     ``CT_COVID/``, ``CT_NonCOVID/``, ``Data-split/``
``"medmnist"``     :class:`~.medmnist.MedMNISTReader`   one ``.npz`` with ``{train,val,test}_{images,labels}``
``"folder"``       :class:`~.folder.FolderReader`       DICOM/PNG slices + ``labels.csv`` (``file,label``)
=================  ===================================  ==========================================

Every reader is an iterable of records with two side products filled while it is iterated:
``counts`` (a dict of plain integers: slices read, series or images skipped and why) and
``skipped`` (a :class:`~ssl_lib.data.store.SkipLog`). Bad input raises *one*
:class:`~ssl_lib.data.store.StoreError` naming the file and the problem (the library error
chained with ``from``); with ``skip_bad=True`` the file is skipped, logged (``logging``
warning, naming the file as ``skipped.csv`` does) and recorded in ``skipped`` instead. Records carry the raw patient
identifier (the store keeps only its salted hash) and a non-identifying ``source``.
:func:`ssl_lib.data.build.build_store` turns a reader into a store.
"""

from ssl_lib.data.readers.base import (IMAGE_SUFFIXES, PNG16_HELP, BadSource, Png16, SourceReader, load_grey_image,
                                       load_mask, parse_png16)
from ssl_lib.data.readers.covidct import CovidCTReader
from ssl_lib.data.readers.folder import FolderReader
from ssl_lib.data.readers.lidc import LidcReader
from ssl_lib.data.readers.medmnist import MedMNISTReader, fetch_medmnist

#: ``kind`` -> reader class, as :func:`ssl_lib.data.build.build_store` uses it.
READERS = {"lidc": LidcReader, "covid": CovidCTReader, "medmnist": MedMNISTReader, "folder": FolderReader}

__all__ = [
    "BadSource", "SourceReader", "load_grey_image", "Png16", "parse_png16", "PNG16_HELP", "load_mask", "IMAGE_SUFFIXES",
    "LidcReader", "CovidCTReader", "MedMNISTReader", "FolderReader", "fetch_medmnist", "READERS",
]
