"""Encoders: each takes one kind of input, says which (`modalities`) and exposes `out_dim`.

- resnet.py: SmallResNet and torchvision ResNets (torch + torchvision only: it travels with exports as modeling.py)
- timm_encoder.py: any timm model by name (ViTs, CNNs)
- sequence.py: the recurrent encoder of sequences and waveforms (per-step MLP, strided convs or log-mel, then a GRU)
- graph.py: the GCN of node-level graphs (torch_geometric)
- text.py: token-id encoders (small transformer, char CNN, bag of n-grams, Hugging Face models)

Nothing is imported here, so `import ssl_train.encoders.resnet` needs neither timm nor torch_geometric.
"""
