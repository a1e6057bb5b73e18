<?php
return array(
    /* 消息队列配置 */
    'QUEUE' => array(
        'type' => 'redis',
        'host' => '127.0.0.1',
        'port' => getenv('FIXTURE_REDIS_PORT') ?: '6379',
        'prefix' => 'queue',
        'auth' => '',
    ),
);
