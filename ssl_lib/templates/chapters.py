"""The study's chapters that are not per method: their cells, as the templates in notebooks/ hold them.

Each function returns the ``(kind, source[, id])`` cells (:mod:`ssl_lib.templates.writer`) of one
template: data (01), fine-tuning (06), reduction (07), Grad-CAM (08) and results (09) of the
reproduction of Wolf et al. 2023. Prose first; each code cell one call into ``ssl_lib`` plus a
figure or table. Edit the text here and run ``make notebooks``; the per-method pre-training
chapter is :func:`ssl_lib.templates.pretrain.pretrain_cells`.
"""

from __future__ import annotations

from .writer import Cell


def preprocess() -> list[Cell]:
    """The cells of ``notebooks/01_preprocess.ipynb`` (ids cell-NN)."""
    return [
        ('md', r"""
# Data: from CT sources to slice stores

Every later step of the study reads one format, the **slice store**: 8-bit slices of one size in a
single memory-mapped array, plus a manifest (slice, anonymised patient key, label, split, source)
and the data set's mean and standard deviation for normalisation. Decoding DICOM or PNG files
happens once, here, never per training epoch.

Four stores feed the study, each from its source's own layout. The paper's sources and how each
is read by default (the summary under "Building the stores" says what this build read, and where
its patient keys came from):

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
patient: no patient key crosses train, validation and test. A key is only as good as its source:
where a labels CSV gives no patient column and the files are not DICOM, each image is its own
key, and the summary's *patients from* column says that one patient's images may then fall into
different splits.

With no source given, each store is built from the **built-in synthetic CT data set**, written in
the same layouts as the real sources (real DICOM series with fake identifiers, the COVID-CT
folders with `%` in file names, an OrganSMNIST-style `.npz`, a DICOM folder with a labels CSV),
with ground-truth lesion and organ masks kept for scoring Grad-CAM heat maps later.
"""),
        ('params', """
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
        ('code', """
from ssl_lib import present
from ssl_lib.data import views
from ssl_lib.data.prepare import prepare_stores

present.whole_tables()  # tables show every column and whole cells (the book shows them as they are)
"""),
        ('md', """
## Building the stores

Each store is built once and reused while its source and size stay the same.
"""),
        ('code', """
stores = prepare_stores(output_dir, profile, lidc_root=lidc_root or None, covid_root=covid_root or None,
                        organs_npz=organs_npz or None, brain_root=brain_root or None,
                        brain_labels=brain_labels or None, image_size=image_size or None,
                        skip_bad=skip_bad, seed=seed, progress=False, covid_patient=covid_patient,
                        covid_strict=covid_strict, png16=png16 or None, workers=workers, tasks=tasks or None)
views.store_summary(stores)
"""),
        ('md', """
## COVID-CT: the official split and the patient rule

The COVID-CT split files decide the split, as in every published result on this data set. Its file
names are figure ids of papers, not people; the patient rule (`covid_patient`) groups them. In the
real repository the default rule (the name before `%`) puts some keys into two splits, e.g.
NonCOVID `14.png` (train) and `14%0.jpg` … `14%3.jpg` (test). The store keeps the official split and
gives such a key one key per split; the table lists every file involved (empty: none).
`covid_strict = True` stops instead.
"""),
        ('code', 'views.split_conflicts(stores)'),
        ('md', """
## Example slices

A few slices of every store, with the class and, where the source has one, the lesion or organ mask outlined in red.
"""),
        ('code', 'views.show_examples(stores);'),
        ('md', """
## Hounsfield units before and after the interval mapping

The voxels of one pre-training CT series: HU values (dashed lines: the mapped interval) and the grey values they become. Air sits at the bottom, soft tissue in a narrow band, bone above; the mapping keeps all of them, at the price of low soft-tissue contrast.
"""),
        ('code', 'views.hu_histogram_of(lidc_root, output_dir);'),
        ('md', """
## Class counts per split

Slices per class in each patient-level split. The brain task is later split again into five cross-validation folds by patient.
"""),
        ('code', 'views.class_counts(stores)'),
        ('md', """
## Browse the slices

The slider steps through a store's slices with their masks: every slice in JupyterLab, 24 evenly spaced slices drawn in advance in the book (no kernel needed).
"""),
        ('code', 'views.slice_browser(views.first_labelled(stores))'),
    ]


def finetune() -> list[Cell]:
    """The cells of ``notebooks/06_finetune.ipynb``."""
    return [
        ('md', """
# Fine-tuning one task

Wolf et al. fine-tune a ResNet50 on each downstream task: the encoder comes from a pre-training (or
a random initialisation, the "-" row of their Table 2), one linear layer is added, and Adam
(lr 1e-4, batch 64) first trains only that layer for ten epochs with the encoder frozen, then the
whole model. The epoch with the best validation score is tested once on the test set.

This notebook runs that protocol for one task, one initialisation and one training fraction over
the profile's seeds, and shows the training curves and the test confusion matrix. The runs land in
the same results table as the full grid (notebook 07), which then does not repeat them.

The `quick` profile shortens the protocol to fit a laptop CPU: 40 frozen-encoder epochs with the
linear layer at lr 1e-3 (cheap: the frozen encoder's features are computed once and shared by
all runs of that encoder), then 1 epoch of the whole model at lr 1e-4 (see the book's methods
page).
""", '18b6bda5'),
        ('params', """
profile = "quick"              # smoke | quick | paper
output_dir = "outputs/quick"   # the study folder (stores, encoders, results)
task = ""                      # empty: the study's first task; covid | organs | brain | a user task
init = "spark"                 # random | imagenet | byol | swav | mocov2 | spark | path of a released checkpoint
imagenet_weights = ""          # torchvision ResNet weights file you downloaded (e.g. resnet50.pth): the imagenet init; empty: none
fraction = 1.0                 # share of the training split
seeds = None                   # None: the profile's seeds
device = "cpu"
workers = "auto"               # fine-tuning processes side by side ("auto": 1 on a GPU; see ft.run_grid)
executor = "local"             # local | slurm | submitit-local: where the runs go (see ssl_lib.cluster)
executor_options = None        # slurm: e.g. {"partition": "gpu", "gpus_per_job": 1, "time_min": 240, "array_parallelism": 32}
""", '48489f8d'),
        ('code', """
import pandas as pd
from ssl_lib import cluster, finetune as ft, present, report, runs
from ssl_lib.tasks import fold_of, use_study_tasks

present.whole_tables()  # tables show every column and whole cells (the book shows them as they are)
prof = ft.get_profile(profile)
seeds = list(seeds) if seeds is not None else list(prof.seeds)
pd.DataFrame([vars(prof)]).T.rename(columns={0: profile})
task = task or use_study_tasks(output_dir)[0]  # the study's tasks (the pre-processing step's 'tasks')
if imagenet_weights:  # the study keeps its own copy of the weights (never their path); runs read that
    ft.use_imagenet_weights(output_dir, imagenet_weights, prof.arch)
""", '767632d9'),
        ('md', """
## The task's data

The task's store is read once into memory (uint8 slices); every epoch indexes it, nothing is
decoded again. Counts per split and class:
""", 'efa756a2'),
        ('code', """
data = ft.load_task_data(output_dir, task, prof.image_size)
pd.DataFrame(data.store.meta["counts"]).fillna(0).astype(int)
""", 'e8d09eb6'),
        ('md', """
## Fine-tuning

One run per seed (for the Brain task, seed *s* uses fold *s* mod 5 of its cross-validation).
Each run appends one row to `finetune/results.csv` and saves the model, its curves and its
per-slice test probabilities.
""", '1ebb423c'),
        ('code', """
rows = ft.run_grid(output_dir, [task], [init], [fraction], seeds, prof, device=device, workers=workers,
                   executor=cluster.make_executor(executor, **(executor_options or {})))
name = ft.init_name(init, output_dir, prof.arch)
present.runs_view(rows[(rows["task"] == task) & (rows["init"] == name) & (rows["fraction"] == fraction)])
""", '9b0addbc'),
        ('md', """
## Training curves

Grey: the epochs in which only the linear layer trains (the backbone, BatchNorm statistics
included, is frozen).
""", '5843c144'),
        ('code', """
curves = runs.load_curves(output_dir, task, name)
report.plot_curves(curves[curves["fraction"] == fraction]);
""", 'c9bef6be'),
        ('md', '## Test confusion matrix (first seed)', 'bc435e76'),
        ('code', """
pred = runs.load_predictions(output_dir, task, name, fraction, seeds[0], fold_of(task, seeds[0]))
report.plot_confusion(pred, data.spec.class_names);
""", 'ccdda5f1'),
    ]


def reduction() -> list[Cell]:
    """The cells of ``notebooks/07_reduction.ipynb``."""
    return [
        ('md', """
# Dataset reduction

The paper shrinks each task's training set in steps of 25 % (and to 10 % and 5 % for the large
OrganSMNIST set) and fine-tunes every pre-trained encoder on each reduced set, five times with a
new random, class-stratified subset per run. A task is reduced no further once every pre-training
method's mean test F1 is below 0.7.

Here every run draws its subset from its own seed; for one seed the smaller subsets are nested in
the larger ones. The grid is resumable: runs already in the results table are skipped, so an
interrupted notebook continues where it stopped.

Given a torchvision ResNet weights file (`imagenet_weights`, e.g. torchvision's published ImageNet
weights, downloaded beforehand: nothing is downloaded here), the grid adds the baseline the paper
leaves out, **ImageNet (supervised)**: the same ResNet, whose three-channel stem takes the repeated
grey channel as every encoder of the study does, fine-tuned by the same protocol. Like the random
initialisation it does not count for the stopping rule.
""", '7e91e953'),
        ('params', """
profile = "quick"              # smoke | quick | paper
output_dir = "outputs/quick"   # the study folder
tasks = ""                     # empty: the study's tasks (default covid, organs, brain); or names / the JSON of step 01
inits = None                   # None: random, imagenet (with imagenet_weights), every method with exported encoders
imagenet_weights = ""          # torchvision ResNet weights file you downloaded (e.g. resnet50.pth): adds ImageNet; empty: none
fractions = None               # None: the profile's steps per task
seeds = None                   # None: the profile's seeds
stop_f1 = "profile"            # the paper's stopping limit (0.7 in the paper profile), None: run all steps
device = "cpu"
workers = "auto"              # processes running fine-tuning runs side by side ("auto": 1 on a GPU, one per core on a small CPU)
executor = "local"             # local | slurm | submitit-local: where the runs go (see ssl_lib.cluster)
executor_options = None        # slurm: e.g. {"partition": "gpu", "gpus_per_job": 1, "time_min": 240, "array_parallelism": 32}
""", '9128a794'),
        ('code', r"""
import pandas as pd
from ssl_lib import cluster, finetune as ft, present, report

present.whole_tables()  # tables show every column and whole cells (the book shows them as they are)
prof = ft.get_profile(profile)
if imagenet_weights:  # the study keeps its own copy of the weights (never their path); runs read that
    ft.use_imagenet_weights(output_dir, imagenet_weights, prof.arch)
inits = list(inits) if inits is not None else ft.default_inits(output_dir)
names = ft.task_names(tasks or None, output_dir)  # user tasks: 100/75/50/25/10 %
pd.DataFrame({"task": names, "fractions": [prof.fractions_for(t) for t in names]}) \
    .assign(inits=", ".join(inits), seeds=str(list(seeds or prof.seeds)))
""", 'af75340d'),
        ('md', """
## The grid

Every task x init x fraction x seed; progress is shown, finished runs are not recomputed.
""", 'e75ce912'),
        ('code', """
results = ft.run_grid(output_dir, names, inits, fractions, seeds, prof, stop_f1=stop_f1, device=device, workers=workers,
                      executor=cluster.make_executor(executor, **(executor_options or {})))
results.groupby(["task", "fraction"])["init"].count().unstack("fraction")
""", '29c6f604'),
        ('md', """
## Training set sizes (the paper's Table 3)

Mean size over runs, the paper's "≈ per class" (size / classes), our mean count per class, and the
paper's published sizes.
""", '066e720f'),
        ('code', 'report.table3(results)', '74bb39b2'),
        ('md', """
## The stopping rule

Mean test F1 of each pre-training method per step; the paper stops reducing a task once all are
below 0.7. The F1 is the one the paper's rule read, that of the authors' code (`f1_seed`: micro
F1 for OrganSMNIST, F1 of the NonCOVID class for COVID-19, of the finding for Brain); the
`paper` profile stops on it, the small profiles run every step.
""", '1d39cad3'),
        ('code', 'report.stopping_table(results, metric="f1_seed")', 'dca6414f'),
        ('md', "## AUC and F1 against the training fraction (the paper's Figure 5)", '9bc10718'),
        ('code', 'report.figure5(results);', '148d3cb2'),
        ('md', 'Browse the curves one task and metric at a time:', 'cell-browse-md'),
        ('code', 'present.reduction_browser(results)', 'cell-browse'),
    ]


def gradcam() -> list[Cell]:
    """The cells of ``notebooks/08_gradcam.ipynb`` (ids nb08-NN)."""
    return [
        ('md', """
# Grad-CAM: where do the fine-tuned models look?

Wolf et al. (2023) applied Grad-CAM (Selvaraju et al. 2017, via `pytorch-grad-cam`) to the COVID-19 test images with the fine-tuned model of each pre-training method (Figure 4) and compared the methods by the Pearson correlation between two methods' heat maps of the same image, averaged over the test set. They found low mean correlations (0.02–0.07): the methods focus on different regions, and "the majority of focus points are located in the lung".

This notebook computes the heat maps at the last ResNet stage (`layer4`; the quick profile uses the first, see below) for the model of every initialisation (including no pre-training, *random*) on the same test images, shows the Figure 4 layout and the correlation matrix with bootstrap 95 % intervals. Beyond the paper it explains the same models with more than one method — three other class activation maps and occlusion sensitivity, which asks the model instead of its gradients — measures how well each method's maps localise the lesion (where the data set has lesion masks) and whether they lie in the lung (the paper's claim), against maps that know nothing of the image, and which gradient map agrees with occlusion. The text under the tables is written from the tables when the book is built.
"""),
        ('params', """
profile = "quick"  # smoke | quick | paper
output_dir = "outputs/quick"
task = ""  # the task to explain; empty: the study's first (COVID-19 unless tasks say otherwise)
fraction = 1.0  # which fine-tuned models: fraction of the training set (with run_seed)
run_seed = 0  # and their fine-tuning seed (the grid keeps the models of its first seed; `seed` is the study's)
fold = -1  # cross-validated tasks (brain): the fold of that model
n_examples = 2  # example images per class in the Figure 4 layout
lung = "auto"  # score the maps inside the lung: "auto" (the COVID-19 chest task), True or False
"""),
        ('code', """
from IPython.display import Markdown, display

from ssl_lib import explain, explain_figures, explain_text, heatmap_stats, present
from ssl_lib.profiles import explain_profile

present.whole_tables()  # tables show every column and whole cells (the book shows them as they are)
"""),
        ('md', """
## Heat maps of every method on the same test images

For each initialisation the fine-tuned model of this task, training fraction and seed is loaded and Grad-CAM explains the finding (COVID-19, class 1) for binary tasks, the true class otherwise. Maps are min-max scaled to [0, 1] and cached under `gradcam/`. The table gives each model's test accuracy on these images, its mean probability for the explained class, and how many Grad-CAM maps are constant (no positive evidence at all: such maps have no defined correlation and are left out below). Where a profile enlarges the images for Grad-CAM (`input_size`; none of the shipped ones does), two more columns give the same accuracy and probability at the size the models were fine-tuned at (e.g. `accuracy_64px`, `prob_target_64px`): where they differ from the first two, the enlarged input moves the model's output, and its maps explain a model that sees other images than it was trained on.
"""),
        ('code', """
result = explain.run_gradcam(output_dir, task, fraction, run_seed, profile=profile, fold=fold, lung=lung)
display(result.heat.summary().round(3))
display(Markdown(explain_text.heat_coverage(result.heat)))
"""),
        ('md', """
## Figure 4: example heat maps

Rows: example test images (the finding first, then negatives); columns: the input (lesion outline in white where a mask exists) and the Grad-CAM overlay of each method, with the probability the model gives the explained class.
"""),
        ('code', 'fig = explain_figures.plot_examples(result.heat, n_examples)'),
        ('md', """
## Do the methods look at the same places?

Pearson correlation between the heat maps of two methods on the same image, averaged over the test images, with a bootstrap 95 % interval over images. `n` is the number of images with a defined correlation, `n_constant` the images left out because one of the two maps is constant. The paper reports means of 0.02–0.07 between its four pre-training methods.
"""),
        ('code', """
display(result.correlation.round(3))
if heatmap_stats.any_scored(result.correlation, "mean_r"):  # every map constant: no matrix to draw
    fig = explain_figures.plot_correlation(result.correlation)
"""),
        ('md', """
Maps left out of the correlation and localisation, per explanation method and model: a constant
map (no positive evidence for the explained class) has no defined correlation and nothing to place.
The quick profile runs its class activation maps at the first ResNet stage (a 16 × 16 grid) on the
test images at the 64 px its models were fine-tuned at: there the last stage is a 2 × 2 grid that
cannot point at a lesion, and enlarged images put the models off their training size (see the
methods page).
"""),
        ('code', 'result.dropped.round(3)'),
        ('md', """
## Beyond the paper: more than one explanation method

A gradient map can miss what a model uses, so the same models explain the same images with three more class activation maps of `pytorch-grad-cam`, at the same layer and for the same class: **Grad-CAM++** (Chattopadhay et al. 2018, weights from higher-order gradients), **LayerCAM** (Jiang et al. 2021, each position weighted by its own positive gradient) and **HiResCAM** (Draelos & Carin 2020, gradient times activation, summed). They differ only in how activations and gradients are combined, so one backward pass serves all four. **Occlusion sensitivity** (Zeiler & Fergus 2014, through MONAI's `OcclusionSensitivity`) instead hides one square of the image at a time and records how much the probability of the explained class drops: it asks the model, not its gradients, and costs one forward pass per square, so it runs on fewer images (the profile's square, stride, fill and image cap are stated above). One image, every method and model:
"""),
        ('code', 'fig = explain_figures.plot_explainers(result.heat)'),
        ('md', """
## Where do the maps lie?
"""),
        ('code', """
display(Markdown(explain_text.measures_text(result.localisation, explain_profile(profile).tolerance)
                 or "*Nothing to localise: this store has no lesion masks and the lung is not scored for this task.*"))
if len(result.localisation):
    display(explain_text.score_grid(result.localisation, "energy"))
    display(present.full_table(result.localisation.round(4), "localisation.csv", summary="Every score"))
    if heatmap_stats.any_scored(result.localisation):  # no model scored: the bars would be empty
        fig = explain_figures.plot_localisation(result.localisation)
"""),
        ('code', 'display(Markdown(explain_text.findings(result.localisation)))'),
        ('md', """
## Which gradient map agrees with occlusion?

Per model, the Pearson correlation between each gradient map and the occlusion map of the same image, averaged over the images occlusion explained, with a bootstrap 95 % interval. A gradient method that shows what the model uses should correlate with what hiding the image does.
"""),
        ('code', """
if len(result.agreement):
    display(result.agreement.round(3))
    if heatmap_stats.any_scored(result.agreement, "mean_r"):  # nothing compared: no empty matrix
        fig = explain_figures.plot_agreement(result.agreement)
    display(Markdown(explain_text.agreement_text(result.agreement)))
else:
    print("occlusion is not among this profile's explanation methods")
"""),
        ('md', """
## Browse the heat maps

Pick an image with the slider and a method from the menu. In JupyterLab the browser is live (with the overlay strength too); in the book every image and method is drawn in advance, so it works without a kernel.
"""),
        ('code', """
try:
    browser = explain_figures.heatmap_browser(result.heat)
except ImportError as err:  # no ipywidgets: the figures above still stand
    browser = None
    print(f"interactive browser unavailable ({err})")
browser
"""),
    ]


def results() -> list[Cell]:
    """The cells of ``notebooks/09_results.ipynb``."""
    return [
        ('md', """
# Results

The paper's Table 2 (all training data), Table 3 (reduced training sets) and Figure 5, from our
results tables only: `finetune/results.csv` (one row per fine-tuning run) and the per-slice test
predictions. The paper's own published numbers are shown beside ours for reference. We add what
the paper lacks: the exact metric definitions, and tests of which differences between
pre-training methods hold.
""", 'c79a0fda'),
        ('params', """
profile = "quick"              # smoke | quick | paper
output_dir = "outputs/quick"   # the study folder
n_boot = 1000                  # bootstrap resamples for the statistics
alpha = 0.05
""", '5779f0ea'),
        ('code', """
from IPython.display import HTML, display
from ssl_lib import present, report, stats

present.whole_tables()  # tables show every column and whole cells (the book shows them as they are)
results = report.load_results(output_dir, profile)
display(HTML(report.synthetic_banner(results)))
print(f"{len(results)} fine-tuning runs of profile {profile!r}")
""", '82854b0c'),
        ('md', """
## Metric definitions

The paper does not say for which class F1 is computed. Ours: the finding (COVID, hemorrhage) for
binary tasks and the macro average for OrganSMNIST. The authors' code computes other variants;
we keep them in the column `f1_seed`.
""", 'b609a8d8'),
        ('code', 'report.metric_definitions()', 'ca7f7708'),
        ('md', """
## Table 1: computational cost

The cost of each pre-training and of fine-tuning per task, this study's beside the paper's (one
RTX 3090, ResNet50, 900 pre-training epochs). Pre-training time is the sum of its epochs;
fine-tuning time the mean over the runs on all training data. Peak memory is the GPU's on a GPU
and the process's peak resident memory ("RSS") on a CPU, which is why a CPU build's figures are
not comparable with the paper's.
""", 'cell-table1-md'),
        ('code', 'report.table1(output_dir, results)', 'cell-table1'),
        ('md', """
## Table 2: all training data

AUC and F1 as in the paper, mean ± standard deviation over runs (seeds; for Brain, cross-validation folds).
""", '44b76ce7'),
        ('code', 'report.table2(results, metrics=("auc", "f1"))', '56245646'),
        ('md', "Accuracy, which the paper's Table 2 does not report:", 'cell-accuracy-md'),
        ('code', 'report.table2(results, metrics=("accuracy",))', 'cell-accuracy'),
        ('md', """
The paper's Table 2 as published (ResNet50, 224 px, their data) - reference only:
""", '85bfcbdb'),
        ('code', 'report.paper_table2()', 'ff41416f'),
        ('md', "Ours beside the paper's, AUC and F1:", '1e904344'),
        ('code', 'report.table2_vs_paper(results)', '048916d2'),
        ('md', """
The F1 variants of the authors' code (COVID-19: F1 of NonCOVID; OrganSMNIST: micro F1):
""", '279ae3fe'),
        ('code', 'report.table2(results, metrics=("f1", "f1_seed"))', 'e4033fc5'),
        ('md', '## Table 3: training set sizes per reduction step', '89015066'),
        ('code', 'report.table3(results)', '6fd06574'),
        ('md', '## Figure 5: AUC and F1 against the training fraction', '649a73e9'),
        ('code', 'report.figure5(results);', '9410114e'),
        ('md', """
## Pre-training against random initialisation

The headline comparison per task: each pre-trained initialisation (the supervised ImageNet one
too, where the study was given its weights) minus the random one, at all training data and at
the smallest fraction, as mean ± SD over runs (seeds; for Brain, folds).
Whether a difference holds is decided in the next section.
""", 'a11e0001'),
        ('code', 'report.headline(results)', 'a11e0002'),
        ('md', """
## Which differences hold

Every pair of initialisations is compared per task, training fraction and metric by a two-level
paired test: the mean difference over the paired runs (the same seeds, or cross-validation folds,
for both) is divided by a standard error that adds how much the difference moves from run to run
and the test-slice noise the runs share (from a paired bootstrap over the slices), so that a
verdict is meant to hold for new runs and for new patients alike. The p-values are
Holm-corrected over all pairs of initialisations within one task, training fraction and metric,
and a difference *holds* when the corrected p is below alpha.

The grid shows every comparison at once: one row per pair *A vs B*, one column per task and training fraction, one panel per metric; the number is A - B. Blue: A is better and the difference holds; red: B is better and it holds; grey: it does not hold.
""", '626c5a7f'),
        ('code', """
comparisons = stats.compare_inits(output_dir, profile=profile, n_boot=n_boot, alpha=alpha)
stats.save_comparisons(output_dir, comparisons)  # the book's intro states the verdicts from this file
present.verdict_grid(comparisons);
""", 'cc37f57c'),
        ('md', """
Only the differences that hold, as sentences (nothing else in this book claims that one method beats another):
""", 'f952b420'),
        ('code', r"""
print("\n".join(report.claims(comparisons)) or "No difference between initialisations holds at this number of runs.")
""", 'ded02149'),
        ('md', """
Every comparison with its difference, 95 % interval over runs and test slices, corrected p, each source of noise alone (the paired t-test over runs, the bootstrap interval over test slices) and verdict (open the section, or download the table):
""", 'cell-full-md'),
        ('code', """
present.full_table(report.stats_table(comparisons), "comparisons.csv", summary="All comparisons")
""", 'cell-full-table'),
        ('md', """
What the verdicts can find at this study's size (`stats.power_table`: simulated studies with the
comparisons' smallest number of paired runs and median number of test slices per run, base AUC 0.8,
half the slices positive): the share in which an initialisation truly better by 0.05 or 0.10 AUC
is declared better, when runs vary, when they hardly do and when both, for one comparison and, in
the Holm columns, for the smallest p of a full family.
""", 'cell-power-md'),
        ('code', """
tested = comparisons[comparisons["n_runs"] >= 2]
if tested.empty:
    print("No comparison has two paired runs: there are no verdicts, and no power to state.")
else:
    n_runs, n_cases = int(tested["n_runs"].min()), int(tested["n_cases"].median())
    n_pairs = int(tested.groupby(list(stats.FAMILY)).size().max())
    simulated = "" if n_cases <= stats.POWER_MAX_CASES else f" (simulated with {stats.POWER_MAX_CASES}: a lower bound)"
    print(f"{n_runs} paired runs, {n_cases} test slices per run{simulated}, up to {n_pairs} pairs per Holm family")
    display(stats.power_table(n_runs, n_cases, n_pairs=n_pairs).apply(lambda c: c.map("{:.0%}".format)))
""", 'cell-power'),
    ]
