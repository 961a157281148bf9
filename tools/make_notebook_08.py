"""Write notebooks/08_gradcam.ipynb (papermill template, no outputs) with nbformat."""
import nbformat as nbf

md, code = nbf.v4.new_markdown_cell, nbf.v4.new_code_cell
cells = [
    md("# Grad-CAM: where do the fine-tuned models look?\n\n"
       "Wolf et al. (2023) applied Grad-CAM (Selvaraju et al. 2017, via `pytorch-grad-cam`) to the "
       "COVID-19 test images with the fine-tuned model of each pre-training method (Figure 4) and compared "
       "the methods by the Pearson correlation between two methods' heat maps of the same image, averaged "
       "over the test set. They found low mean correlations (0.02–0.07): the methods focus on different "
       "regions, mostly inside the lung.\n\n"
       "This notebook computes the heat maps at the last ResNet stage (`layer4`; the quick profile uses the third, see below) for the model of every "
       "initialisation (including no pre-training, *random*) on the same test images, shows the Figure 4 "
       "layout, the correlation matrix with bootstrap 95 % intervals, and — beyond the paper, where the "
       "data set has lesion masks (the synthetic tasks do) — how well each method's heat map localises "
       "the lesion compared with heat maps that know nothing of the image."),
    code('profile = "quick"  # smoke | quick | paper\n'
         'output_dir = "outputs/quick"\n'
         'task = ""  # the task to explain; empty: the study\'s first (COVID-19 unless tasks say otherwise)\n'
         'fraction = 1.0  # which fine-tuned models: fraction of the training set ...\n'
         'run_seed = 0  # ... and fine-tuning seed (the grid keeps the models of its first seed; `seed` is the study\'s)\n'
         'fold = -1  # cross-validated tasks (brain): the fold of that model\n'
         'n_examples = 2  # example images per class in the Figure 4 layout',
         metadata={"tags": ["parameters"]}),
    code("from IPython.display import display\n\nfrom ssl_lib import explain"),
    md("## Heat maps of every method on the same test images\n\n"
       "For each initialisation the fine-tuned model of this task, training fraction and seed is loaded and "
       "Grad-CAM explains the finding (COVID-19, class 1) for binary tasks, the true class otherwise. Maps are "
       "min-max scaled to [0, 1] and cached under `gradcam/`. The table gives each model's test accuracy on "
       "these images, its mean probability for the explained class, and how many maps are constant (no "
       "positive evidence at all: such maps have no defined correlation and are left out below)."),
    code("result = explain.run_gradcam(output_dir, task, fraction, run_seed, profile=profile, fold=fold)\n"
         "display(result.heat.summary().round(3))"),
    md("## Figure 4: example heat maps\n\n"
       f"Rows: example test images (the finding first, then negatives); columns: the input (lesion outline in "
       "white where a mask exists) and the Grad-CAM overlay of each method, with the probability the model "
       "gives the explained class."),
    code("fig = explain.plot_examples(result.heat, n_examples)"),
    md("## Do the methods look at the same places?\n\n"
       "Pearson correlation between the heat maps of two methods on the same image, averaged over the test "
       "images, with a bootstrap 95 % interval over images. `n` is the number of images with a defined "
       "correlation, `n_constant` the images left out because one of the two maps is constant. The paper "
       "reports means of 0.02–0.07 between its four pre-training methods."),
    code("display(result.correlation.round(3))\n"
         "fig = explain.plot_correlation(result.correlation)"),
    md("Maps left out of the correlation and localisation above: a constant map (Grad-CAM found no\n"
       "positive evidence for the explained class) has no defined correlation and nothing to place.\n"
       "The quick profile runs Grad-CAM on test images enlarged to 128 px at the second ResNet stage (a\n"
       "16 × 16 grid), because the last stage at its 64 px training size is a 2 × 2 grid that cannot point\n"
       "at a lesion, and a cell of the third stage's 8 × 8 grid is as large as a synthetic lesion."),
    code("result.dropped.round(3)"),
    md("## Beyond the paper: do the heat maps find the lesion?\n\n"
       "On positive test images with a non-empty lesion mask: the **energy share** (the part of the heat "
       "map's total inside the mask) and the **pointing game** (is the map's maximum inside the mask, dilated "
       "by the profile's tolerance?). Two baselines that ignore the image set the bar: a uniform-random map "
       "(its expected score is the mask's area fraction, column `chance`) and a centre-Gaussian prior. "
       "Intervals are bootstrap 95 % over images; constant maps are left out (`n_excluded`). The table is "
       "empty for data without masks."),
    code("display(result.localisation.round(3)) if len(result.localisation) else print(\"no lesion masks in this store: nothing to localise\")\n"
         "fig = explain.plot_localisation(result.localisation)"),
    md("## Browse the heat maps\n\n"
       "Pick an image with the slider and a method from the menu. In JupyterLab the browser is live (with "
       "the overlay strength too); in the book every image and method is drawn in advance, so it works "
       "without a kernel."),
    code("try:\n"
         "    browser = explain.heatmap_browser(result.heat)\n"
         "except ImportError as err:  # no ipywidgets: the figures above still stand\n"
         "    browser = None\n"
         "    print(f\"interactive browser unavailable ({err})\")\n"
         "browser"),
]
for i, cell in enumerate(cells):  # stable ids: a regenerated template differs only where its text does
    cell["id"] = f"nb08-{i:02d}"
nb = nbf.v4.new_notebook(cells=cells, metadata={
    "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
    "language_info": {"name": "python"}})
nbf.validate(nb)
nbf.write(nb, "notebooks/08_gradcam.ipynb")
