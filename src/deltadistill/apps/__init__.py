"""The app layer: the `deltadistill` command (`cli`), `demo`, `bench`, the side-by-side run behind
it (`evaluate`) and what it writes (`report`). Everything here calls the library; nothing below
imports from here."""
