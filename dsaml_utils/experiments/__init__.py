"""The paper's comparisons over seeds, personalizing one listener from files, and the bench."""
