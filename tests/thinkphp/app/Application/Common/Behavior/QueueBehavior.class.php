<?php
namespace Common\Behavior;

/* The seed's app_init behaviour. */
class QueueBehavior
{
    public function run()
    {
        // 处理队列配置
        $config = C('QUEUE');
        if ($config) {
            vendor('php-resque.autoload');
            // 初始化队列服务,使用database(1)
            \Resque::setBackend(['redis' => $config], 1);
            // 初始化缓存前缀 (the seed's php-resque never applies it: keys stay under resque:)
            if (isset($config['prefix']) && !empty($config['prefix']))
                \Resque\Redis::prefix($config['prefix']);
        }
    }
}
