"""From fields to maps: sampling, classification and regression maps, and the paper's evaluation protocol."""
