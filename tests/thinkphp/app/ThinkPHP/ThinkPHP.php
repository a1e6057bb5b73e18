<?php
/*
 * The part of ThinkPHP 3.2 a CLI entry script relies on: constants, C(), vendor(), the
 * app_init behaviour, then BIND_CONTROLLER's BIND_ACTION. Relative paths, as ThinkPHP's are:
 * the entry script must run from the application's root.
 */
define('IS_CLI', PHP_SAPI === 'cli');
defined('APP_PATH') or define('APP_PATH', './Application/');
define('THINK_PATH', __DIR__ . '/');
define('COMMON_PATH', APP_PATH . 'Common/');
define('VENDOR_PATH', THINK_PATH . 'Library/Vendor/');

if (!is_dir(APP_PATH)) {
    exit('ThinkPHP: application directory ' . APP_PATH . ' not found (working directory ' . getcwd() . ")\n");
}

function C($name = null)
{
    static $config = null;
    if ($config === null) {
        $config = require COMMON_PATH . 'Conf/config.php';
    }
    return $name === null ? $config : (isset($config[$name]) ? $config[$name] : null);
}

function vendor($class)
{
    return require_once VENDOR_PATH . str_replace('.', '/', $class) . '.php';
}

// ThinkPHP's autoloader: Namespace\Class → APP_PATH/Namespace/.../Class.class.php
spl_autoload_register(function ($class) {
    $file = APP_PATH . str_replace('\\', '/', $class) . '.class.php';
    if (is_file($file)) {
        require_once $file;
    }
});

// app_init behaviours
require_once COMMON_PATH . 'Behavior/QueueBehavior.class.php';
(new \Common\Behavior\QueueBehavior())->run();

$controller = '\\' . BIND_MODULE . '\\Controller\\' . BIND_CONTROLLER . 'Controller';
if (!class_exists($controller)) {
    exit("ThinkPHP: controller {$controller} not found\n");
}
$action = BIND_ACTION;
(new $controller())->$action();
