"""The tiny pretrained bases that ship in :file:`assets/`: where they are (:mod:`.locate`, a leaf), the random
test SD folder (:mod:`.sd`) and the recipes that train the shipped ones (:mod:`.recipes`)."""
