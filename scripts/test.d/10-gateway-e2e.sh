# The web shop in headless Chromium: register, search, cart, checkout, history, a declined card.
bash gateway/e2e/run.sh
