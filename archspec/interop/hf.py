def spec_from_hf(path): raise NotImplementedError
def load_hf_weights(model, path): raise NotImplementedError
