import sys
from pathlib import Path
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tools.nbtemplate import write_notebook
write_notebook(ROOT / "notebooks/01_preprocess.ipynb", [
("md", r"""
# Data: from CT sources to slice stores

Every later step of the study reads one format, the **slice store**: 8-bit slices of one size in a
single memory-mapped array, plus a manifest (slice, anonymised patient key, label, split, source)
and the data set's mean and standard deviation for normalisation. Decoding DICOM or PNG files
happens once, here, never per training epoch.

Four stores feed the study, each from its source's own layout:

| store | paper source | layout read | intensity |
|---|---|---|---|
| `lidc` (pre-training, unlabelled) | LIDC-IDRI, 1,010 patients, 244,527 slices | `LIDC-IDRI/<patient>/<study>/<series>/*.dcm` | HU −1024…3071 → 0…255 (no window) |
| `covid` (COVID-19 vs none) | COVID-CT, 746 slices | `CT_COVID/`, `CT_NonCOVID/`, `Data-split/*.txt` | PNG/JPG as given, grey |
| `organs` (11 organs) | OrganSMNIST, 25,221 crops | MedMNIST `.npz` | as given |
| `brain` (hemorrhage vs none) | internal, 200 patients | DICOM + `labels.csv` | brain window 35/80 HU |

For DICOM, stored values become Hounsfield units with the series' RescaleSlope and
RescaleIntercept, $\mathrm{HU} = s \cdot v + b$; the pre-training slices are then mapped linearly
from $[-1024, 3071]$ HU onto $[0, 255]$, as the paper does, without windowing. CT series are sorted
by slice position; non-CT series and series of ten images or fewer (the radiographs in LIDC-IDRI)
are skipped and counted. Patients are kept only as salted one-way hashes, and every split is by
patient: no patient crosses train, validation and test.

With no source given, each store is built from the **built-in synthetic CT data set**, written in
the same layouts as the real sources (real DICOM series with fake identifiers, the COVID-CT
folders with `%` in file names, an OrganSMNIST-style `.npz`, a DICOM folder with a labels CSV),
with ground-truth lesion and organ masks kept for scoring Grad-CAM heat maps later.
"""),
("params", """
profile = "quick"              # smoke | quick | paper
output_dir = "outputs/quick"   # everything this study writes goes under here
lidc_root = ""                 # LIDC-IDRI download tree; empty: synthetic
covid_root = ""                # COVID-CT repository folder; empty: synthetic
organs_npz = ""                # organsmnist.npz; empty: synthetic
brain_root = ""                # folder of DICOM/PNG slices; empty: synthetic
brain_labels = ""              # labels CSV (file,label[,patient][,split]); default <brain_root>/labels.csv
image_size = 0                 # task image size; 0: the profile's
skip_bad = False               # skip unreadable files (listed in skipped.csv) instead of stopping
covid_patient = "prefix"       # COVID-CT patient rule: prefix (name before '%') | name (every file its own)
covid_strict = False           # True: refuse patient keys that cross the official split (names every file)
png16 = ""                     # 16-bit grey PNGs: bits:12 (values 0 to 4095) or hu:1024 (HU plus 1024); empty: an error
workers = "auto"               # processes decoding DICOM: "auto" (one per core for large trees) or a number
tasks = ""                     # labelled tasks as JSON; empty: the paper's covid, organs, brain. A user task:
# '["covid", {"name": "liver", "reader": "folder", "source": "/data/liver", "class_names": ["no lesion", "lesion"]}]'
seed = 0
"""),
("code", """
from ssl_lib.data import views
from ssl_lib.data.prepare import prepare_stores
"""),
("md", "## Building the stores\n\nEach store is built once and reused while its source and size stay the same."),
("code", """
stores = prepare_stores(output_dir, profile, lidc_root=lidc_root or None, covid_root=covid_root or None,
                        organs_npz=organs_npz or None, brain_root=brain_root or None,
                        brain_labels=brain_labels or None, image_size=image_size or None,
                        skip_bad=skip_bad, seed=seed, progress=False, covid_patient=covid_patient,
                        covid_strict=covid_strict, png16=png16 or None, workers=workers, tasks=tasks or None)
views.store_summary(stores)
"""),
("md", """## COVID-CT: the official split and the patient rule

The COVID-CT split files decide the split, as in every published result on this data set. Its file
names are figure ids of papers, not people; the patient rule (`covid_patient`) groups them. In the
real repository the default rule (the name before `%`) puts some keys into two splits, e.g.
NonCOVID `14.png` (train) and `14%0.jpg` … `14%3.jpg` (test). The store keeps the official split and
gives such a key one key per split; the table lists every file involved (empty: none).
`covid_strict = True` stops instead."""),
("code", "views.split_conflicts(stores)"),
("md", "## Example slices\n\nA few slices of every store, with the class and, where the source has one, the lesion or organ mask outlined in red."),
("code", "views.show_examples(stores);"),
("md", "## Hounsfield units before and after the interval mapping\n\nThe voxels of one pre-training CT series: HU values (dashed lines: the mapped interval) and the grey values they become. Air sits at the bottom, soft tissue in a narrow band, bone above; the mapping keeps all of them, at the price of low soft-tissue contrast."),
("code", "views.hu_histogram_of(lidc_root, output_dir);"),
("md", "## Class counts per split\n\nSlices per class in each patient-level split. The brain task is later split again into five cross-validation folds by patient."),
("code", "views.class_counts(stores)"),
("md", "## Browse the slices\n\nThe slider steps through a store's slices with their masks: every slice in JupyterLab, 24 evenly spaced slices drawn in advance in the book (no kernel needed)."),
("code", "views.slice_browser(views.first_labelled(stores))"),
])
