"""Evidence people can see: the printable report per analysis, the video timeline, the public
model page, and the "Can you beat the model?" game."""
