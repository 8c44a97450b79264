<?php
// A stock PHP app with session.save_handler = redis (phpredis). The only Tribe-specific
// thing is none: session.save_path points at Redis or at the Tribe node next to the app
// (--resp-addr), e.g. php -d session.save_handler=redis -d session.save_path=tcp://127.0.0.1:6379
//
//   POST /login?user=NAME   sign in (regenerates the session id)
//   POST /count             counter += 1
//   POST /cart?item=NAME    add an item to the cart
//   GET  /me                the session: {user, count, cart}
//   POST /logout            destroy the session
$path = parse_url($_SERVER['REQUEST_URI'], PHP_URL_PATH);
if ($path === '/healthz') { echo "ok"; return; }
header('Content-Type: application/json');
session_start();
function view() {
    return json_encode([
        'user' => $_SESSION['user'] ?? null,
        'count' => $_SESSION['count'] ?? 0,
        'cart' => $_SESSION['cart'] ?? [],
    ]);
}
switch ($path) {
    case '/login':
        session_regenerate_id(true);
        $_SESSION['user'] = $_GET['user'];
        $_SESSION['count'] = 0;
        $_SESSION['cart'] = [];
        break;
    case '/count':
        $_SESSION['count'] = ($_SESSION['count'] ?? 0) + 1;
        break;
    case '/cart':
        $_SESSION['cart'] = array_merge($_SESSION['cart'] ?? [], [$_GET['item']]);
        break;
    case '/me':
        break;
    case '/logout':
        $_SESSION = [];
        session_destroy();
        break;
    default:
        http_response_code(404);
}
echo view();
