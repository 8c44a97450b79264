// A stock express-session + connect-redis app. The only Tribe-specific thing is none:
// REDIS_URL points at Redis or at the Tribe node next to the app (--resp-addr).
//
//   POST /login?user=NAME   sign in (regenerates the session id)
//   POST /count             counter += 1
//   POST /cart?item=NAME    add an item to the cart
//   GET  /me                the session: {user, count, cart}
//   POST /logout            destroy the session
//   POST|GET /counter       {counter} (the benchmark's request)
const express = require("express");
const session = require("express-session");
const { RedisStore } = require("connect-redis");
const { createClient } = require("redis");

const redis = createClient({ url: process.env.REDIS_URL || "redis://127.0.0.1:6379" });
redis.on("error", (e) => console.error("redis:", e.message));

const app = express();
app.use(
  session({
    store: new RedisStore({ client: redis }), // prefix "sess:"
    secret: process.env.SESSION_SECRET || "example-secret",
    name: process.env.SESSION_COOKIE || "connect.sid",
    resave: false,
    saveUninitialized: false,
    cookie: { maxAge: 30 * 60 * 1000 },
  })
);

const view = (s) => ({ user: s.user || null, count: s.count || 0, cart: s.cart || [] });

app.post("/login", (req, res, next) => {
  req.session.regenerate((err) => {
    if (err) return next(err);
    req.session.user = req.query.user;
    req.session.count = 0;
    req.session.cart = [];
    res.json(view(req.session));
  });
});
app.post("/count", (req, res) => {
  req.session.count = (req.session.count || 0) + 1;
  res.json(view(req.session));
});
app.post("/cart", (req, res) => {
  req.session.cart = [...(req.session.cart || []), req.query.item];
  res.json(view(req.session));
});
app.get("/me", (req, res) => res.json(view(req.session)));
app.post("/logout", (req, res, next) => {
  req.session.destroy((err) => (err ? next(err) : res.json(view({}))));
});
// The benchmark's counter (tribe-bench `sidecar` section).
app.post("/counter", (req, res) => {
  req.session.counter = (req.session.counter || 0) + 1;
  res.json({ counter: req.session.counter });
});
app.get("/counter", (req, res) => res.json({ counter: req.session.counter || 0 }));
app.get("/healthz", (req, res) => res.send("ok"));

redis.connect().then(() => {
  const port = Number(process.env.PORT || 3000);
  app.listen(port, "127.0.0.1", () => console.log(`listening on ${port}`));
});
