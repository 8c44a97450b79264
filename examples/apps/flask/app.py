"""A stock Flask + Flask-Session app. The only Tribe-specific thing is none: REDIS_URL
points at Redis or at the Tribe node next to the app (--resp-addr).

  POST /login?user=NAME   sign in (regenerates the session id)
  POST /count             counter += 1
  POST /cart?item=NAME    add an item to the cart
  GET  /me                the session: {user, count, cart}
  POST /logout            clear the session
"""
import os

import redis
from flask import Flask, jsonify, request, session
from flask_session import Session

app = Flask(__name__)
app.config.update(
    SECRET_KEY=os.environ.get("SESSION_SECRET", "example-secret"),
    SESSION_TYPE="redis",  # keys "session:<sid>"
    SESSION_REDIS=redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")),
    PERMANENT_SESSION_LIFETIME=1800,
)
Session(app)


def view():
    return jsonify(user=session.get("user"), count=session.get("count", 0), cart=session.get("cart", []))


@app.post("/login")
def login():
    app.session_interface.regenerate(session)
    session["user"] = request.args["user"]
    session["count"] = 0
    session["cart"] = []
    return view()


@app.post("/count")
def count():
    session["count"] = session.get("count", 0) + 1
    return view()


@app.post("/cart")
def cart():
    session["cart"] = session.get("cart", []) + [request.args["item"]]
    return view()


@app.get("/me")
def me():
    return view()


@app.post("/logout")
def logout():
    session.clear()
    return view()


@app.get("/healthz")
def healthz():
    return "ok"


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ.get("PORT", "5000")), threaded=True)
